"""train-and-export: the workstation tool that trains, quantizes, evaluates and ships
the chair's emotion model. TensorFlow is needed here only (``pip install .[train]``);
the preprocessing contract comes from ``relaxd.vision``, never a copy of it."""
