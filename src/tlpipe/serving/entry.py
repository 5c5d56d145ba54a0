"""MLflow "model from code" entry: the file `serving.registry.log_model` logs as the pyfunc model's code.

MLflow runs it when the model is loaded (tlpipe itself travels with the model in code_paths), so
loading a served model unpickles nothing: the weights come from the checkpoint, read with
weights_only=True."""

from mlflow.models import set_model

from tlpipe.serving.model import ImageClassifier

set_model(ImageClassifier())
