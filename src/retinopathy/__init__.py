"""Diabetic-retinopathy grading with the project's own ResNet18/ResNet50, as a DVC pipeline."""

NUM_CLASSES = 5
GRADES = tuple(range(NUM_CLASSES))

__version__ = "0.1.0"
