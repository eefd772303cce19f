"""What a training job executes, and nothing else: the job contract (jobs), datasets and their checks,
the design, preprocessing, fitting, algorithms, metrics, postprocessing and the serving bundle, run by
`python -m trainer.run.run_job`. Training images carry only this package and the few `modelplane` modules it
imports (trainer/launchers/image_build.py SOURCE_PATHS), so nothing here imports the rest of `trainer`."""
