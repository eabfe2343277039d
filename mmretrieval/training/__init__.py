"""Training and evaluation: the scene generator behind the demo model, the trainer, datasets, metrics.

Apart from the product: nothing outside ``training`` and the ``train``/``eval`` commands imports it.
"""
