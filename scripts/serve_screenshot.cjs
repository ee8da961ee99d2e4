// The README's screenshot of `idlm serve`: the side-by-side view, a teacher at 1024 steps and a
// student at 16 on the same seed, captured once both are done.
// Usage (a server with models named teacher and student running, playwright-core installed by
// `npm install --prefix target/browser playwright-core@1.65.1`):
//   NODE_PATH=target/browser/node_modules node scripts/serve_screenshot.cjs HOST:PORT docs/serve-page.png
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [addr, shot, teacher = "teacher", student = "student"] = process.argv.slice(2);
  if (!addr || !shot) { throw new Error("usage: node serve_screenshot.cjs HOST:PORT OUT.png [TEACHER STUDENT]"); }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 560 } });
    await page.goto(`http://${addr}/`);
    await page.waitForSelector("#model option", { state: "attached" });
    await page.fill("#seed", "3");
    await page.check("#side");
    await page.selectOption("#model_a", teacher);
    await page.fill("#steps_a", "1024");
    await page.selectOption("#model_b", student);
    await page.fill("#steps_b", "16");
    await page.click("#go");
    await page.waitForFunction(() => document.querySelectorAll('.panel[data-done="1"]').length === 2,
      null, { timeout: 600000 });
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot ${shot}`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
