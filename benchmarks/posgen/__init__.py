"""PosGen (arXiv 2403.00071, section 5.1) through the whole stack: data, training with
transformers, serving with resonance-serve, teacher-forced accuracy scored over HTTP.

    python -m benchmarks.posgen [--seeds 3] [--paper-scale] [--out DIR]
"""
