"""Training and evaluation: Section 4.5's recipe as a loop, a CLI and recorded runs.

* :mod:`canlib.engine.build`    -- configuration -> data, model, loss, optimisers (the only config readers)
* :mod:`canlib.engine.trainer`  -- the training loop, exact resume, the NaN guard
* :mod:`canlib.engine.run_folder` -- a run's folder: refusals, log, record files, what a resume must match
* :mod:`canlib.engine.tensorboard_log` -- TensorBoard event files of the log and the metrics (rank 0)
* :mod:`canlib.engine.precision` -- mixed precision and memory format
* :mod:`canlib.engine.distributed` -- DDP under torchrun: sharding, gathering, synchronised BatchNorm
* :mod:`canlib.engine.checks`   -- checks before a run's first write (input height, images)
* :mod:`canlib.engine.errors`   -- how a run stops: its exceptions and the one-line message
* :mod:`canlib.engine.evaluate` -- feature extraction and the re-ID metrics on query/gallery
* :mod:`canlib.engine.record`   -- what every run records beside its metrics (commit, versions, machine)
* :mod:`canlib.engine.weights`  -- trained weights without the training state, for inference
* :mod:`canlib.engine.checkpoint` -- checkpoint files (atomic writes, weights-only loading), RNG states
* :mod:`canlib.engine.onnx_export` -- the model as ONNX, checked against PyTorch with ONNX Runtime
"""

from canlib.engine.trainer import TrainingDiverged, train

__all__ = ["TrainingDiverged", "train"]
