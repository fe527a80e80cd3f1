"""Engine speed against transformers and llama.cpp on identical weights (``python -m bench.engine``)."""
