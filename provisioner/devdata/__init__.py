"""Development data: AEIMS-shaped application roots at any scale, for tests and benchmarks.

`aeims_generator.generate(root, customers=N, seed=S)` writes every file the data layer knows,
with the quirks of the real files; `php_text` spells JSON the way those files do.
"""
