"""Test support shared by the tests and the benchmarks (installed with the package, so that both import it the same
way, with no path set up): ``beat_cases`` (real recordings and provoking cases for the beat detector) and ``common``
(the machine line of every results table, the InfoNCE peer from OpenCLIP, Triton compile and resource helpers, beat
matching). Nothing in the library imports it."""
