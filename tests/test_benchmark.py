"""The benchmark's report: what it writes around the measured numbers (the timings themselves are
measured by scripts/benchmark.py, never in tests)."""

from adamgap.analysis.benchmark import END, begin, markdown, write_into


def _page(**kw) -> str:
    rows = [("`python scripts/train.py conf=synthetic_adam`", "6.0", "notes")]
    return markdown(rows, [], 3, 1, 6.0, {False: 15.0, True: 12.0}, 30.0, (0.5, 0.7), **kw)


def test_the_report_names_the_command_that_measured_it_and_the_targets():
    text = _page(command="python scripts/benchmark.py --repeats 3 --no-protocol",
                 steps=[(2, 0.4, 0.8), (100, 0.6, 1.2), (200, 0.5, 1.0)])
    assert text.startswith("`python scripts/benchmark.py --repeats 3 --no-protocol` on ")
    assert "medians of 3 fresh processes" in text and "other jobs shared" not in text
    assert "<= 0.4x the plain loop: **0.50x**" in text  # 6 / 12, the flushed loop
    assert "Batch-100 step <= 0.6x a full-batch step: **1.20x**" in text
    assert "| 2 | 0.400 | 0.80 | 0.11 |" in text and "| 200 | 0.500 | 1.00 | - |" in text
    assert "batch-2 protocol" not in text  # not measured: not claimed


def test_a_busy_machine_is_said_and_the_page_prose_is_kept(tmp_path):
    text = markdown([], [], 1, 1, 6.0, {False: 15.0, True: 12.0}, 30.0, (1.9, 2.1))
    assert "other jobs shared the cores, so these times are inflated." in text
    page, mark = tmp_path / "benchmark.md", begin("scripts/benchmark.py")
    page.write_text(f"# Benchmark\nprose before\n{mark}\nold numbers\n{END}\nprose after\n")
    write_into(page, "new numbers\n")
    assert page.read_text() == (f"# Benchmark\nprose before\n{mark}\nnew numbers\n{END}\n"
                                "prose after\n")


def test_the_protocol_rows_state_their_own_repeats_and_the_per_seed_target():
    protocol = [("one seed", 420.0, 420.0, "test error 0.000"),
                ("5 seeds, one ensemble", 900.0, 180.0, "test error 0.000")]
    text = _page(steps=[(100, 0.6, 1.2), (200, 0.5, 1.0)], protocol=protocol,
                 protocol_repeats=1)
    assert "the batch-2 protocol <= 300 s per seed: **420 s** (one seed), **180 s** per seed" \
        in text
    assert "Medians of 1 fresh processes." in text and "medians of 3 fresh processes" in text
    assert "| 5 seeds, one ensemble | 900.0 | 180.0 | test error 0.000 |" in text
