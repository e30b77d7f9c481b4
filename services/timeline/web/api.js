// The timeline service's JSON API as the reviewer's pages use it: bearer token, typed errors.

const TOKEN_KEY = "safehub.timeline.token";

/** Take `?token=` from the address once, keep it for this tab, and drop it from the address. */
export function takeToken() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

/** An HTTP answer other than 2xx, or the service being unreachable (status 0). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function request(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  let response;
  try {
    response = await fetch(url, { headers: headers(), cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, `the timeline service did not answer (${err.message})`);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = body.error || body.message || body.detail || detail;
    } catch {
      // Not JSON: keep the status text.
    }
    throw new ApiError(response.status, String(detail));
  }
  return response;
}

/** GET a JSON document. */
export async function getJson(path, params) {
  return (await request(path, params)).json();
}

/** GET an attachment with the bearer token and hand it to the browser as a download. */
export async function download(path, params, fallbackName) {
  const response = await request(path, params);
  const blob = await response.blob();
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  const name = match ? decodeURIComponent(match[1]) : fallbackName;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  return name;
}

/** A reviewer-facing title and explanation for a failed request about a `what` ("incident"). */
export function describeError(err, what) {
  if (!(err instanceof ApiError)) {
    return { title: "Something went wrong", detail: String(err && err.message ? err.message : err) };
  }
  switch (err.status) {
    case 0:
      return { title: "Timeline service unreachable", detail: err.message };
    case 400:
      return { title: "The request was not accepted", detail: err.message };
    case 401:
      return {
        title: "Sign-in required",
        detail:
          "No valid reviewer token. Open this page from the link you were given " +
          "(it ends in ?token=…); the token is kept only for this browser tab.",
      };
    case 403:
      return {
        title: "Not permitted",
        detail: `Your reviewer account may not see this ${what}.`,
      };
    case 404:
      return {
        title: `${what[0].toUpperCase()}${what.slice(1)} not found`,
        detail:
          "It does not exist, or it belongs to a district your reviewer account does not cover.",
      };
    default:
      return { title: `The timeline service failed (HTTP ${err.status})`, detail: err.message };
  }
}
