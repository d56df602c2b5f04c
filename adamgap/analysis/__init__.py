"""Reading results: the gap report, the real-data section, the W&B report, the speed
benchmark."""
