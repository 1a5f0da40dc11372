"""The model-from-code file of every audio model this project logs (MLflow's recommended way to log
a custom pyfunc: the model is built from this file at load time instead of unpickled)."""

import mlflow

from search.serving import AudioSceneModel

mlflow.models.set_model(AudioSceneModel())
