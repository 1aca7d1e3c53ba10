"""The parts of the fuzz test of every RPC (tests/test_fuzz.py): what it sends
(`strategies`), the model of what the server should hold (`model`), the calls and what
each answer teaches the model (`driver`), and the checks over a whole run (`checks`)."""
