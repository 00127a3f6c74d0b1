// Runs on the audio thread: hands the microphone's mono samples to the page in blocks of about 4096, and the rest
// when the page says "flush" (then it stops).
"use strict";

class Recorder extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(4096);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data !== "flush") return;
      this.port.postMessage(this.block.slice(0, this.filled));
      this.port.postMessage("flushed");
      this.filled = 0;
      this.running = false;
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!this.running || !channel) return this.running;
    let offset = 0;
    while (offset < channel.length) {
      const n = Math.min(channel.length - offset, this.block.length - this.filled);
      this.block.set(channel.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === this.block.length) {
        this.port.postMessage(this.block.slice());
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("pg-recorder", Recorder);
