// Drives the page of `idlm serve` in headless Chromium (Debian's, through playwright-core):
// types a prompt and sees it kept in the sample, then one too long and sees it refused by name,
// clears it, generates,
// checks the text changed over at least 3 steps with the masks only resolving and ends as the API's
// text for the same seed, runs the side-by-side view (64 vs 4 steps), then saves a screenshot. Usage: node page.cjs HOST:PORT SCREENSHOT.png
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [addr, shot] = process.argv.slice(2);
  if (!addr || !shot) { throw new Error("usage: node page.cjs HOST:PORT SCREENSHOT.png"); }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 640 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`http://${addr}/`);
    await page.waitForSelector("#model option", { state: "attached" });
    await page.fill("#steps", "24");
    await page.fill("#seed", "7");
    // A prompt: kept in the sample as it resolves (clamped), and a prompt too long for the row is
    // refused with the server's reason on the page.
    await page.type("#prompt", "the whale and");
    await page.click("#go");
    await page.waitForSelector('.panel[data-done="1"]', { timeout: 60000 });
    const prompted = await page.textContent(".panel .text");
    if (!prompted.includes("the whale and")) { throw new Error(`prompt not kept: ${prompted}`); }
    await page.fill("#prompt", "the whale ".repeat(40));
    await page.click("#go");
    await page.waitForSelector(".panel .error");
    const err = await page.textContent(".panel .error");
    if (!/400: .*prompt/.test(err)) { throw new Error(`no prompt error shown: ${err}`); }
    await page.fill("#prompt", "");
    // Record the text the page shows after every DOM change of the output.
    await page.evaluate(() => {
      window.idlmSeen = [];
      new MutationObserver(() => {
        const t = document.querySelector(".panel .text");
        if (t) { window.idlmSeen.push({ masks: t.querySelectorAll(".mask").length, text: t.textContent }); }
      }).observe(document.getElementById("panels"), { childList: true, subtree: true, characterData: true });
    });
    await page.click("#go");
    await page.waitForSelector('.panel[data-done="1"]', { timeout: 60000 });
    const seen = await page.evaluate(() => window.idlmSeen);
    const states = seen.filter((s, i) => i === 0 || s.text !== seen[i - 1].text || s.masks !== seen[i - 1].masks);
    const masked = states.filter((s) => s.masks > 0);
    if (masked.length < 3) {
      throw new Error(`the text changed over ${masked.length} masked steps: ${JSON.stringify(states.slice(0, 5))}`);
    }
    for (let i = 1; i < masked.length; i++) {
      if (masked[i].masks > masked[i - 1].masks) { throw new Error(`masks grew at ${i}`); }
    }
    const shown = await page.textContent(".panel .text");
    const api = await page.evaluate(async () => {
      const r = await fetch("/v1/completions", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ steps: 24, seed: 7, max_tokens: Number(document.getElementById("max_tokens").value) }) });
      return (await r.json()).choices[0].text;
    });
    if (shown !== api) { throw new Error(`page shows ${JSON.stringify(shown)}, the API gives ${JSON.stringify(api)}`); }
    // Side by side: the same model at many and at few steps, same seed, each panel with its calls
    // and time (the page's teacher-vs-student view).
    await page.check("#side");
    await page.selectOption("#model_a", "teacher");
    await page.fill("#steps_a", "64");
    await page.selectOption("#model_b", "teacher");
    await page.fill("#steps_b", "4");
    await page.click("#go");
    await page.waitForFunction(() => document.querySelectorAll('.panel[data-done="1"]').length === 2,
      null, { timeout: 60000 });
    const heads = await page.$$eval(".panel h2", (hs) => hs.map((h) => h.textContent));
    const stats = await page.$$eval(".panel .stats", (ss) => ss.map((s) => s.textContent));
    if (!/64 steps/.test(heads[0]) || !/4 steps/.test(heads[1])) { throw new Error(`panels: ${heads}`); }
    const nfe = stats.map((s) => Number((/(\d+) network calls/.exec(s) || [])[1]));
    if (!(nfe[1] >= 1 && nfe[1] <= 4 && nfe[0] > nfe[1])) { throw new Error(`side-by-side stats: ${stats}`); }
    if (errors.length) { throw new Error(`page errors: ${errors.join("; ")}`); }
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`ok: ${masked.length} masked steps seen, side by side ${nfe[0]} vs ${nfe[1]} calls, screenshot ${shot}`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
