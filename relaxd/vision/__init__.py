"""Vision: face detection, the preprocessing contract and the emotion classifier.

``relaxd.vision.preprocess`` and ``relaxd.vision.model_meta`` are the single source of
truth shared by the daemon and the training tool in ``tools/``.
"""
