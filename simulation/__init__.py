"""A simulated app user: feedback logs with known true relevance, for tests and benchmarks.

From lists whose true labels are known (:mod:`simulation.labelled`), a display policy
(:mod:`simulation.display`) orders each list as the app would show it, and a position-based user
(:mod:`simulation.users`) picks among what was shown. :func:`simulation.simulator.simulate` writes
the result as the app's ``reranker_training_data.json`` records, with the true grades kept beside
them so that what the picks teach can be scored against what users actually wanted.
"""
