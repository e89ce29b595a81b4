"""What a run writes: reports, pictures, annotated .h5ad, clusters, metrics, fenced writes."""
