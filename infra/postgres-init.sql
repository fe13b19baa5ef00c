-- The MLflow backend store lives beside Prefect's database in the same Postgres.
CREATE DATABASE mlflow;
