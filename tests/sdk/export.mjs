// Exports to the host with the real TypeScript SDK (run by tests/tests/export.rs).
//
// Writes under $HOME (a private temporary directory the test made) and checks what landed on
// disk. Prints one `ok: <check>` line per check and `ALL OK` at the end; any failure throws.
import assert from "node:assert/strict"
import fs from "node:fs"
import path from "node:path"
import { connection, dag } from "@dagger.io/dagger"

function ok(name, check) {
  check()
  console.log(`ok: ${name}`)
}

const mode = (p) => fs.lstatSync(p).mode & 0o7777

const home = process.env.HOME
const target = path.join(home, "exported")
fs.mkdirSync(target)
fs.writeFileSync(path.join(target, "stale.txt"), "old")

await connection(
  async () => {
    const d = dag
      .directory()
      .withNewFile("a.txt", "alpha", { permissions: 0o640 })
      .withNewFile("sub/run.sh", "#!/bin/sh\necho hi\n", { permissions: 0o755 })
    const written = await d.export(target, { wipe: true })
    ok("directory export returns the absolute path", () => assert.equal(written, target))
    ok("exported contents", () => assert.equal(fs.readFileSync(path.join(target, "a.txt"), "utf8"), "alpha"))
    ok("exported modes", () =>
      assert.deepEqual([mode(path.join(target, "a.txt")), mode(path.join(target, "sub/run.sh"))], [0o640, 0o755]),
    )
    ok("wipe removes stale files", () => assert.deepEqual(fs.readdirSync(target).sort(), ["a.txt", "sub"]))

    const single = path.join(home, "single.txt")
    const out = await d.file("sub/run.sh").export(single)
    ok("file export", () => {
      assert.equal(out, single)
      assert.equal(fs.readFileSync(single, "utf8"), "#!/bin/sh\necho hi\n")
      assert.equal(mode(single), 0o755)
    })

    const into = path.join(home, "into")
    fs.mkdirSync(into)
    await d.file("a.txt").export(into, { allowParentDirPath: true })
    ok("file export into a directory", () => assert.equal(fs.readFileSync(path.join(into, "a.txt"), "utf8"), "alpha"))
  },
  { LogOutput: process.stderr },
)

console.log("ALL OK")
