// Who is logged in. The session cookie is HttpOnly, so the app remembers only the name (to know
// whether asking `/api/v1/me` is worth it) and asks the server once at start.
import { useEffect, useState } from "preact/hooks";
import { api, call } from "./api/client";

const HINT = "skython.user";
let current: string | null = null;
let checked = false;
const listeners = new Set<() => void>();

function set(name: string | null) {
  current = name;
  if (name) localStorage.setItem(HINT, name);
  else localStorage.removeItem(HINT);
  listeners.forEach((l) => l());
}

/** Asks the server who the cookie belongs to (only when this browser logged in before). */
export async function restore(): Promise<void> {
  if (localStorage.getItem(HINT)) {
    try {
      const me = await call(api.GET("/api/v1/me"));
      set(me.name);
    } catch {
      set(null);
    }
  }
  checked = true;
  listeners.forEach((l) => l());
}

export const loggedIn = (name: string) => set(name);

export async function logOut(): Promise<void> {
  await call(api.DELETE("/api/v1/sessions/current"));
  set(null);
}

/** The logged-in name (null when nobody), and whether the server has been asked yet. */
export function useSession(): { user: string | null; checked: boolean } {
  const [, tick] = useState(0);
  useEffect(() => {
    const l = () => tick((n) => n + 1);
    listeners.add(l);
    return () => listeners.delete(l);
  }, []);
  return { user: current, checked };
}
