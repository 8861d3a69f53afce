// The skdigits serve page: a drawing pad, the model's answer, the model's input.
// Served by the package itself; it talks only to its own origin (api/model, api/predict).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const pad = $("pad");
  const ink = pad.getContext("2d");
  const seen = $("seen");
  const answer = $("answer");

  let model = null;          // what GET api/model describes
  let strokePointer = null;  // id of the pointer drawing now
  let last = null;           // its last position on the pad
  let dirty = false;         // the pad changed since the last prediction was sent
  let inFlight = false;      // a drawing's prediction is on its way
  let generation = 0;        // bumped by Clear and uploads: older answers are dropped
  let roundTrips = 0;
  let pending = 0;           // predictions on their way, shown as body[data-pending] for
                             // scripts (and tests) that wait for the answer

  // ------------------------------------------------------------ the pad
  function blankPad() {
    ink.fillStyle = "#fff";
    ink.fillRect(0, 0, pad.width, pad.height);
  }

  function position(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * pad.width / box.width,
            (event.clientY - box.top) * pad.height / box.height];
  }

  function lineWidth(event) {
    // A pen's pressure thickens the line; mice and fingers report 0.5 while pressed.
    const base = pad.width / 14;
    const pressure = event.pointerType === "pen" && event.pressure > 0 ? event.pressure : 0.5;
    return base * (0.5 + pressure);
  }

  function segment(from, to, width) {
    ink.strokeStyle = "#000";
    ink.lineWidth = width;
    ink.lineCap = "round";
    ink.lineJoin = "round";
    ink.beginPath();
    ink.moveTo(from[0], from[1]);
    ink.lineTo(to[0], to[1]);
    ink.stroke();
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    strokePointer = event.pointerId;
    document.body.dataset.pointer = event.pointerType;  // mouse, touch or pen
    last = position(event);
    segment(last, last, lineWidth(event));  // a tap leaves a dot
    predictSoon();
  });

  pad.addEventListener("pointermove", (event) => {
    if (event.pointerId !== strokePointer) return;
    // Coalesced events keep a fast stroke smooth where the browser batches moves.
    const moves = (event.getCoalescedEvents && event.getCoalescedEvents().length)
      ? event.getCoalescedEvents() : [event];
    for (const move of moves) {
      const here = position(move);
      segment(last, here, lineWidth(move));
      last = here;
    }
    predictSoon();
  });

  function endStroke(event) {
    if (event.pointerId !== strokePointer) return;
    strokePointer = null;
    predictSoon();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  $("clear").addEventListener("click", () => {
    generation += 1;
    dirty = false;
    blankPad();
    showNothing();
    say("");
  });

  // ---------------------------------------------------- asking the model
  // At most one drawing's prediction is on its way; when it returns, the
  // newest state of the pad is sent if it changed meanwhile.  The answer
  // follows the pen without a queue of stale requests building up.
  function predictSoon() {
    dirty = true;
    if (!inFlight) pump();
  }

  async function pump() {
    inFlight = true;
    working(+1);
    while (dirty) {
      dirty = false;
      const gen = generation;
      const png = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
      if (gen === generation) await predict(png, gen);
    }
    inFlight = false;
    working(-1);
  }

  function working(change) {
    pending += change;
    document.body.dataset.pending = String(pending);
  }

  async function predict(body, gen) {
    const started = performance.now();
    document.body.dataset.state = "busy";
    let response, reply;
    try {
      response = await fetch("api/predict", {
        method: "POST", body,
        headers: {"Content-Type": body.type || "application/octet-stream"},
      });
      reply = await response.json();
    } catch (err) {
      if (gen === generation) fail("The server did not answer. Is skdigits serve still running?");
      return false;
    }
    if (gen !== generation) return false;
    roundTrips += 1;
    answer.dataset.roundTrips = String(roundTrips);
    if (!response.ok) {
      fail(reply.error || `The server answered ${response.status}.`);
      return false;
    }
    show(reply, performance.now() - started);
    return true;
  }

  // -------------------------------------------------------------- upload
  $("upload").addEventListener("change", async (event) => {
    const input = event.target;
    const file = input.files[0];
    input.value = "";  // choosing the same file again is a new upload
    if (!file) return;
    generation += 1;
    dirty = false;
    const gen = generation;
    working(+1);
    try {
      await upload(file, gen);
    } finally {
      working(-1);
    }
  });

  async function upload(file, gen) {
    const limit = model ? model.limits.max_bytes : Infinity;
    if (file.size > limit) {
      // Refused here too, so a huge file is not even sent.
      fail(`${file.name}: refused: the file is larger than the limit of ` +
           `${size(limit)} (${size(file.size)})`);
      return;
    }
    if (await predict(file, gen)) {
      await drawUpload(file);
      say(`Uploaded ${file.name}. Draw on it, or Clear to start again.`);
    } else if (gen === generation) {
      say(`${file.name}: ${$("message").textContent}`, true);
    }
  }

  async function drawUpload(file) {
    // Only after the server accepted it, so a decompression bomb is never
    // decoded by the browser either.
    blankPad();
    try {
      const picture = await createImageBitmap(file);
      const scale = Math.min(pad.width / picture.width, pad.height / picture.height);
      const w = picture.width * scale, h = picture.height * scale;
      ink.drawImage(picture, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
      picture.close();
    } catch (err) {
      // The browser cannot show every format Pillow reads (e.g. TIFF); the answer stands.
    }
  }

  // ----------------------------------------------------------- showing
  function say(text, isError = false) {
    $("message").textContent = text;
    document.body.dataset.state = isError ? "error" : "ready";
  }

  function fail(text) {
    showNothing();
    say(text, true);
  }

  function size(bytes) {  // as the server words it: kB below 1 MB (1 MB = 2**20 bytes)
    return bytes < 1048576 ? `${(bytes / 1024).toFixed(0)} kB`
                           : `${(bytes / 1048576).toFixed(1)} MB`;
  }

  function percent(p) {
    return `${(100 * p).toFixed(1)}%`;
  }

  function show(reply, ms) {
    drawInput(reply.input);
    const server = reply.timing_ms;
    $("timing").textContent = `Round trip ${ms.toFixed(0)} ms (on the server: decode ` +
      `${server.decode.toFixed(1)}, preprocess ${server.preprocess.toFixed(1)}, model ` +
      `${server.predict.toFixed(1)} ms)`;
    answer.dataset.ms = ms.toFixed(1);
    if (reply.blank) {
      setBars(null);
      $("top-label").textContent = "?";
      $("top-probability").textContent = "";
      answer.dataset.label = "";
      say("No ink found: draw a digit.");
      return;
    }
    setBars(reply.probabilities);
    const best = Math.max(...reply.probabilities);
    $("top-label").textContent = reply.label;
    $("top-probability").textContent = percent(best);
    answer.dataset.label = reply.label;
    say("");
  }

  function showNothing() {
    setBars(null);
    $("top-label").textContent = "?";
    $("top-probability").textContent = "";
    $("timing").textContent = "";
    answer.dataset.label = "";
    seen.getContext("2d").clearRect(0, 0, seen.width, seen.height);
  }

  function setBars(probabilities) {
    const best = probabilities ? probabilities.indexOf(Math.max(...probabilities)) : -1;
    $("bars").querySelectorAll("li").forEach((item, i) => {
      const p = probabilities ? probabilities[i] : 0;
      item.dataset.p = probabilities ? String(p) : "";
      item.classList.toggle("top", i === best);
      item.querySelector(".fill").style.width = `${(100 * p).toFixed(2)}%`;
      item.querySelector(".value").textContent = probabilities ? percent(p) : "";
    });
  }

  function drawInput(rows) {
    // The model's input as it is: ink bright on black, one square per pixel.
    const h = rows.length, w = rows[0].length;
    if (seen.width !== w || seen.height !== h) { seen.width = w; seen.height = h; }
    const picture = new ImageData(w, h);
    rows.flat().forEach((level, i) => {
      picture.data.set([level, level, level, 255], 4 * i);
    });
    seen.getContext("2d").putImageData(picture, 0, 0);
  }

  function buildBars(classes) {
    const list = $("bars");
    list.replaceChildren(...classes.map((label) => {
      const item = document.createElement("li");
      item.dataset.label = label;
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = label;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      track.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      item.append(name, track, value);
      return item;
    }));
  }

  function describe(info) {
    const training = info.training;
    const trained = [];
    if (training.epochs !== undefined) trained.push(`${training.epochs} epochs`);
    if (training.final_loss !== undefined) {
      trained.push(`final training loss ${training.final_loss.toFixed(4)}`);
    }
    if (training.held_out_accuracy !== undefined) {
      trained.push(`held-out accuracy ${percent(training.held_out_accuracy)}`);
    }
    if (training.best_held_out_accuracy !== undefined &&
        training.held_out_accuracy !== training.best_held_out_accuracy) {
      trained.push(`best ${percent(training.best_held_out_accuracy)}`);
    }
    const rows = [
      ["File", info.source],
      ["Pipeline", info.steps.join(" \u2192 ")],
      ["Layers", info.layers.length ? info.layers.join(" \u2192 ") : "(not a layered network)"],
      ["Parameters", info.parameters ? info.parameters.toLocaleString("en") : "\u2013"],
      ["Training", trained.length ? trained.join(", ")
                                  : "nothing stored about the training run"],
      ["Input", `${info.input_shape.join(" x ")} pixels; ` +
                (info.model_preprocessing ? "preprocessed by the model's own ImageTransformer"
                                          : "MNIST-style centring done by this page")],
      ["Uploads", `up to ${size(info.limits.max_bytes)} and ` +
                  `${info.limits.max_pixels.toLocaleString("en")} pixels`],
    ];
    $("model-details").replaceChildren(...rows.flatMap(([term, text]) => {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = text;
      return [dt, dd];
    }));
    $("model-summary").textContent = `${info.estimator} from ${info.source}` +
      (info.layers.length ? `: ${info.layers.join(" \u2192 ")}` : "");
    $("preprocessing").textContent = info.preprocessing;
  }

  async function start() {
    blankPad();
    try {
      const response = await fetch("api/model");
      model = await response.json();
    } catch (err) {
      say("Cannot reach the server. Is skdigits serve running?", true);
      return;
    }
    buildBars(model.classes);
    seen.width = model.input_shape[1];
    seen.height = model.input_shape[0];
    describe(model);
    showNothing();
    say("Draw a digit in the white square, or upload a picture of one.");
  }

  start();
})();
