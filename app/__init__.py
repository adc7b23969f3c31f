"""The FastAPI service. Needs only a TorchScript checkpoint; never imports `training`."""
