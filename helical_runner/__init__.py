"""helical-runner: stream .h5ad chunks from S3/MinIO and fine-tune or apply Helical's Geneformer.

The package inside the runner images. It never imports Airflow: the DAGs launch it as a container.
"""

__version__ = "0.1.0"
