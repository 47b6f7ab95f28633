// A client's use of the generated types: it compiles only while the contract offers what it
// uses (an idempotent create, its answer's user, a page's always-present cursor).
import type { components, paths } from "./generated/api";

type Create = paths["/api/v1/users"]["post"];
type User = components["schemas"]["User"];

const headers: NonNullable<Create["parameters"]["header"]> = {
  "Idempotency-Key": "0190a7a2-6d0e-7c2e-9f4a-1b2c3d4e5f60",
};
const body: Create["requestBody"]["content"]["application/json; charset=utf-8"] = {
  email: "ada@example.com",
  name: "Ada",
};
const created: Create["responses"][201]["content"]["application/json; charset=utf-8"] extends User
  ? true
  : false = true;
const page: components["schemas"]["UserPage"] = { items: [], next_cursor: null };

export { headers, body, created, page };
