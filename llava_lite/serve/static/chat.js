// The chat page: keeps the conversation in OpenAI message form and streams each answer from
// /v1/chat/completions. Model text is only ever set with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const TYPES = ["image/png", "image/jpeg", "image/webp"];
const state = { messages: [], image: null, controller: null };

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function setImage(dataUrl) {
  state.image = dataUrl;
  $("preview").hidden = !dataUrl;
  if (dataUrl) $("preview").src = dataUrl;
  else $("preview").removeAttribute("src");
}

function readImage(file) {
  if (!TYPES.includes(file.type)) {
    showError(`${file.name}: please choose a PNG, JPEG or WebP image`);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => { setImage(reader.result); showError(""); };
  reader.onerror = () => showError(`could not read ${file.name}`);
  reader.readAsDataURL(file);
}

function bubble(role, text, image) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  if (image) {
    const img = document.createElement("img");
    img.src = image;
    img.alt = "uploaded image";
    div.append(img);
  }
  const p = document.createElement("p");
  p.textContent = text;
  div.append(p);
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return `${resp.status}: ${body.error.message}`;
  } catch {
    return `${resp.status} ${resp.statusText}`;
  }
}

// Server-sent events from a fetch response: yields each `data:` payload, parsed, until [DONE].
async function* events(resp) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        if (line === "data: [DONE]") return;
        yield JSON.parse(line.slice(6));
      }
    }
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("prompt").disabled = busy;
}

async function ask(text) {
  const image = state.image;
  const content = image ? [{ type: "image_url", image_url: { url: image } }, { type: "text", text }] : text;
  const turn = { role: "user", content };
  const userDiv = bubble("user", text, image);
  const answerDiv = bubble("assistant", "");
  answerDiv.classList.add("streaming");
  const out = answerDiv.querySelector("p");
  setImage(null);
  showError("");
  setBusy(true);
  const controller = (state.controller = new AbortController());
  const body = {
    messages: [...state.messages, turn],
    stream: true,
    temperature: Number($("temperature").value) || 0,
  };
  let answer = "";
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    for await (const data of events(resp)) {
      if (data.error) throw new Error(data.error.message);
      const delta = data.choices[0]?.delta?.content;
      if (delta) {
        answer += delta;
        out.textContent = answer;
      }
    }
    state.messages.push(turn, { role: "assistant", content: answer });
    answerDiv.classList.remove("streaming");
  } catch (err) {
    // The turn did not happen: take it off the page and give back the text and image to retry.
    userDiv.remove();
    answerDiv.remove();
    if (controller.signal.aborted) return;
    showError(err.message);
    $("prompt").value = text;
    setImage(image);
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      setBusy(false);
      $("prompt").focus();
    }
  }
}

function reset() {
  if (state.controller) state.controller.abort();
  state.controller = null;
  state.messages = [];
  $("log").replaceChildren();
  $("prompt").value = "";
  setImage(null);
  showError("");
  setBusy(false);
}

$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  ask(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("ask").requestSubmit();
  }
});
$("file").addEventListener("change", (e) => {
  if (e.target.files[0]) readImage(e.target.files[0]);
  e.target.value = "";
});
$("reset").addEventListener("click", reset);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) readImage(e.dataTransfer.files[0]);
});

fetch("/health")
  .then((r) => r.json())
  .then((h) => {
    $("model").textContent = h.model;
    $("key-label").hidden = !h.auth;
  })
  .catch(() => showError("cannot reach the server"));
