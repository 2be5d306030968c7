"""Training data: COCO-format instances and referring annotations, synthetic scenes, transforms,
the multi-dataset sampler and the collate function."""
