// AudioWorklet processor: microphone samples (float32, the context's rate) -> 20 ms frames of
// little-endian signed 16-bit PCM posted to the page, which sends them over the WebSocket.
class PcmFramer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = Math.round(sampleRate * 0.02);  // samples per 20 ms
    this.buf = new Int16Array(this.frame);
    this.fill = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      // Mix down to mono when the device gives several channels.
      let s = 0;
      for (let c = 0; c < channels.length; c++) s += channels[c][i];
      s /= channels.length;
      s = Math.max(-1, Math.min(1, s));
      this.buf[this.fill++] = s < 0 ? s * 32768 : s * 32767;
      if (this.fill === this.frame) {
        this.port.postMessage(this.buf.buffer, [this.buf.buffer]);
        this.buf = new Int16Array(this.frame);
        this.fill = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-framer", PcmFramer);
