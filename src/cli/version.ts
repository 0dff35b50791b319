import pkg from "../../package.json" with { type: "json" };

/** kiln's version, from package.json (baked into the compiled binary). */
export const VERSION: string = pkg.version;
