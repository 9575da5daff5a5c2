"""Image and video flow models distilled through the same method registry as the policies:
offline data sets, metrics that need no download, grids and clips, the distillation pipeline
and the media benchmark."""
