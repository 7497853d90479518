"""`python -m llm2clip_nemo.demo`: see `pipeline.main`."""
from .pipeline import main

if __name__ == "__main__":
    raise SystemExit(main())
