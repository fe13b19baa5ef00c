"""The served model as code (MLflow's models-from-code): MLflow runs this file to build it.

Logged beside every version (:func:`bertrec.mlops.registry.log_bundle`) with the bertrec package
as its code path, so loading a version imports code instead of unpickling an object.
"""

from mlflow.models import set_model

from bertrec.serve.pyfunc import BundleModel

set_model(BundleModel())
