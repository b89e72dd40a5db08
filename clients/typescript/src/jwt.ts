/**
 * Reads a JWT's `exp` claim (unix seconds) WITHOUT verifying the signature:
 * the client only needs to know when to refresh; the server verifies.
 * Returns undefined when the token is not a JWT or has no numeric `exp`.
 */
export function decodeJwtExp(token: string): number | undefined {
  const part = token.split(".")[1];
  if (part === undefined || part.length === 0) return undefined;
  try {
    const json = base64UrlDecode(part);
    const claims: unknown = JSON.parse(json);
    if (typeof claims === "object" && claims !== null && "exp" in claims) {
      const exp = (claims as { exp: unknown }).exp;
      return typeof exp === "number" && Number.isFinite(exp) ? exp : undefined;
    }
  } catch {
    // not a JWT: no expiry known
  }
  return undefined;
}

/** True when the token carries an `exp` at or before `nowMs`. Tokens without `exp` are not known to be expired. */
export function isJwtExpired(token: string, nowMs: number): boolean {
  const exp = decodeJwtExp(token);
  return exp !== undefined && exp * 1000 <= nowMs;
}

function base64UrlDecode(input: string): string {
  let b64 = input.replace(/-/g, "+").replace(/_/g, "/");
  while (b64.length % 4 !== 0) b64 += "=";
  // atob exists in browsers and in Node >= 16.
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}
