"""Data in: URLs and S3, the .h5ad layout and row readers, chunking, synthetic files."""
