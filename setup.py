"""vjepa-engine: a data-centric training engine for Video-JEPA pretraining.

Install on a CPU machine (never lets pip pick a CUDA torch):
    pip install -c constraints-cpu.txt -r requirements-cpu.txt && pip install --no-deps -e .
On a GPU machine keep the image's torch/triton and add the GPU extra with a frozen constraints file:
    pip install -c gpu-constraints.txt -e ".[gpu]"
"""
from setuptools import find_packages, setup

setup(
    name="vjepa-engine",
    version="0.1.0",
    description="High-throughput Video-JEPA pretraining engine: DALI shards, Triton kernels, DeepSpeed ZeRO",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["engine", "engine.*", "kernels", "kernels.*", "shards", "shards.*"]),
    # Loose floors only: exact pins live in requirements-cpu.txt. torch is deliberately absent here so
    # that `pip install .` never replaces a machine's own (CPU or CUDA) torch build.
    install_requires=[
        "numpy>=1.26",
        "pyyaml>=6.0",
        "pyarrow>=15",
        "webdataset>=0.2.90",
        "av>=12",
        "deepspeed>=0.15",
        "huggingface_hub>=0.23",  # for DeepSpeed's zero_to_fp32.py in each checkpoint (default --max_shard_size)
        "scikit-learn>=1.4",
        "pillow>=10",
        "tqdm>=4.60",
        "matplotlib>=3.8",
        "safetensors>=0.4",
        "tensorboard>=2.15",
        "fsspec>=2024.6",  # dataset roots as URLs; the backends (s3fs, gcsfs, aiohttp) are the `cloud` extra
    ],
    extras_require={
        "cpu": ["nvidia-dali-cuda130==2.4.0", "triton==3.6.0"],
        # GPU machines: torch and triton come with the image; DALI decodes on NVDEC; xformers is optional.
        "gpu": ["nvidia-dali-cuda130==2.4.0", "xformers>=0.0.30"],
        "test": ["pytest>=8"],
        # Beyond one machine (README): object-store shards, Ray shard builds, wandb/MLflow tracking.
        # Exact pins for CI: requirements-extras.txt.
        "cloud": ["fsspec>=2024.6", "s3fs>=2024.6", "aiohttp>=3.9", "gcsfs>=2024.6"],
        "ray": ["ray>=2.30"],
        "tracking": ["wandb>=0.17", "mlflow-skinny>=2.14"],
        # Released V-JEPA 2 weights in, Hugging Face folders out (engine/interop); 5.25+ needs the `kernels`
        # package, whose name clashes with this repository's kernels/.
        "hf": ["transformers>=5.0,<5.25"],
    },
    entry_points={"console_scripts": ["vjepa-shards=shards.build:main"]},
)
