"""The paper's claims as executable checks (``claims``), the convex control of Theorem 4.2
(``convex``) and the command that trains what they need and writes the verdicts (``verify``)."""
