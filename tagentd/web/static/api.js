// Talking to the dashboard's API. Reads use the login cookie; actions also send the token in a header,
// which a foreign page cannot do (the server refuses a POST without it).

const token = document.querySelector('meta[name="tagent-token"]').content;

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function answer(response) {
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) throw new ApiError(response.status, (data && data.error) || text || response.statusText);
  return data;
}

export async function get(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v)).toString();
  return answer(await fetch(path + (query ? `?${query}` : ""), { credentials: "same-origin" }));
}

export async function post(path) {
  return answer(await fetch(path, {
    method: "POST", credentials: "same-origin", headers: { "X-Tagent-Token": token },
  }));
}

export function stream(params, onEvent, onState) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v)).toString();
  const source = new EventSource(`/api/stream${query ? `?${query}` : ""}`);
  source.onopen = () => onState("live");
  source.onerror = () => onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  source.onmessage = (message) => onEvent(JSON.parse(message.data));
  return source;
}
