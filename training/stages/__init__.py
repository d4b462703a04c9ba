"""``cleaninbox train`` as typed stages, each a library call with a typed result.

In order (``training.pipeline.train`` composes them; a sweep trial runs the first two):

1. :func:`~training.stages.prepare.prepare_data`: banking77, the user's corrections, the
   robustness sets folded in -> :class:`~training.stages.prepare.Prepared`.
2. :func:`~training.stages.fit.fit_or_resume`: LP-FT fine-tuning (or a saved checkpoint),
   WiSE-FT -> :class:`~training.stages.fit.Fitted`.
3. :func:`~training.stages.export.export_and_verify`: int8 ONNX in the staging bundle,
   parity against PyTorch -> :class:`~training.stages.export.Exported`.
4. :func:`~training.stages.calibrate.calibrate_thresholds`: temperature and abstain
   thresholds -> :class:`~training.stages.calibrate.Thresholds`.
5. :func:`~training.stages.evaluate.evaluate`: every figure of the run ->
   :class:`~training.metrics.TrainMetrics`.
6. :func:`~training.stages.report.write_run_report`: figures and ``report/`` files.
7. :func:`~training.stages.publish.publish`: model card, manifest, the versioned bundle.
"""
