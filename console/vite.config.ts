// The console is built into one directory that make embeds into the tide
// binary (scripts/console-build.sh): relative paths, no external requests.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  build: {
    outDir: process.env.TIDE_CONSOLE_OUT || "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
    target: "es2020",
  },
});
