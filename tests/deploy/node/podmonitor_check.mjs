// Validates PodMonitor resources (a JSON array on stdin) against
// prometheus-operator's API, as @kubernetes-models/prometheus-operator
// generates it from the operator's Go types, in two ways:
// - its validator (types, required fields, enums, formats);
// - TypeScript's excess-property check against its type declarations,
//   since that validator accepts unknown fields, which the API server
//   would reject (kubectl's strict field validation) or drop.
// Prints one line per resource checked; exit 1 on any error.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import ts from "typescript";

const here = dirname(fileURLToPath(import.meta.url));
const resources = JSON.parse(readFileSync(0, "utf8"));
if (!Array.isArray(resources) || resources.length === 0) {
  console.error("podmonitor_check: expected a non-empty JSON array on stdin");
  process.exit(1);
}

let failed = false;
for (const r of resources) {
  const name = `${r.kind}/${r.metadata?.name}`;
  try {
    new PodMonitor(r).validate();
  } catch (e) {
    console.error(`ERROR ${name}: ${e.message}`);
    failed = true;
  }
}

// One virtual file: `const m0: IPodMonitor = {...};` per resource.
const file = join(here, "podmonitor-check.ts");
const source =
  'import type { IPodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";\n' +
  resources.map((r, i) => `export const m${i}: IPodMonitor = ${JSON.stringify(r, null, 2)};\n`).join("");
const options = {
  strict: true,
  noEmit: true,
  skipLibCheck: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  types: [],
};
const host = ts.createCompilerHost(options);
const getSourceFile = host.getSourceFile.bind(host);
host.getSourceFile = (name, lang, ...rest) =>
  name === file ? ts.createSourceFile(name, source, lang) : getSourceFile(name, lang, ...rest);
const fileExists = host.fileExists.bind(host);
host.fileExists = (name) => name === file || fileExists(name);
const readFile = host.readFile.bind(host);
host.readFile = (name) => (name === file ? source : readFile(name));
const program = ts.createProgram([file], options, host);
for (const d of ts.getPreEmitDiagnostics(program)) {
  const text = ts.flattenDiagnosticMessageText(d.messageText, "\n");
  let where = "";
  if (d.file && d.start !== undefined) {
    const { line } = d.file.getLineAndCharacterOfPosition(d.start);
    where = `${d.file.fileName === file ? "podmonitor" : d.file.fileName} line ${line + 1}: `;
  }
  console.error(`ERROR ${where}${text}`);
  failed = true;
}

if (failed) process.exit(1);
for (const r of resources) {
  console.log(`ok ${r.kind}/${r.metadata?.name} (@kubernetes-models/prometheus-operator, TypeScript ${ts.version})`);
}
