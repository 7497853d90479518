"""`make demo` (`python -m llm2clip_nemo.demo`): the whole LLM2CLIP pipeline on the embedded default, on CPU.

`pipeline` runs the eight stages and holds `main(argv)`; `report` turns the measured numbers into the
final table and report.md; `console` keeps the screen to the demo's own progress.
"""
