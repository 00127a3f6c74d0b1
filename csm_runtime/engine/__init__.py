"""The engine: CSM (transformers) + Mimi (moshi) as a batch of streams that each emit audio chunks frame by frame.

types.py      the records the generator takes and yields (Segment, GenerationParams, AudioChunk, StreamEvent)
model.py      build or load the CSM model and its tokenizer
codec.py      Mimi: context audio to codes, frames to PCM with one streaming state per slot
frame.py      the frame step: KV caches, explicit positions, device-side sampling, eager or compiled pieces
prompt.py     the prompt CSM was trained on, as backbone input rows
generator.py  StreamingGenerator: slots, prefill, batched decode, chunks
execution.py  how a frame runs: eager or compiled pieces, one CUDA graph per bucket, prepared ahead
loader.py     load_generator / GeneratorFactory: generators from settings
quant.py      weight-only int8 for the decoder layers (off unless chosen)
cpu_linear.py float32 linears through oneDNN with packed weights, for batching on a CPU
sentences.py  what counts as speakable; long text split into pieces
longtext.py   one request's pieces said in order, each with the ones before as context
hub.py        the Hub token for a gated checkpoint, one line per refusal, an access check
download.py   a Hub download's progress, read from the cache
"""
