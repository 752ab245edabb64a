// Drive Debian's Chromium (headless, through playwright-core) for the interop matrix.
//
// Reads one JSON job from stdin: {"executable", "spki", "cells": [{"id", "iceServer", "messages",
// "size", "timeoutMs"}]} and prints one JSON line per cell: {"id", ...what echoThroughRelay
// reports}. A browser that cannot start prints {"fatal": reason} and exits 2.
//
// The flags keep the browser on loopback: no background networking, no QUIC, and a host resolver
// that resolves nothing but the loopback literals the ICE servers use. Chromium drops loopback
// networks from ICE unless --allow-loopback-in-peer-connection is given; with it, relay candidates
// are gathered on a machine (or network namespace) that has nothing but lo. TURN over TLS is
// checked against turnd's certificate: --ignore-certificate-errors-spki-list accepts that one key
// and no other (any other certificate still fails the handshake).
import { chromium } from "playwright-core";
import { echoThroughRelay } from "./echo.mjs";

async function readJob() {
  let text = "";
  for await (const chunk of process.stdin) {
    text += chunk;
  }
  return JSON.parse(text);
}

function flags(job) {
  const list = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--allow-loopback-in-peer-connection",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE ::1, EXCLUDE [::1]",
  ];
  if (job.spki) {
    list.push(`--ignore-certificate-errors-spki-list=${job.spki}`);
  }
  return list;
}

const job = await readJob();
let browser;
try {
  browser = await chromium.launch({ executablePath: job.executable, args: flags(job) });
} catch (error) {
  console.log(JSON.stringify({ fatal: `Chromium did not start: ${error.message}` }));
  process.exit(2);
}
try {
  const source = echoThroughRelay.toString();
  for (const cell of job.cells) {
    const page = await browser.newPage();
    try {
      const result = await page.evaluate(
        async ({ source, cell }) => {
          const run = new Function(`return (${source})`)();
          return run(RTCPeerConnection, cell);
        },
        { source, cell },
      );
      result.userAgent = await page.evaluate(() => navigator.userAgent);
      console.log(JSON.stringify({ id: cell.id, ...result }));
    } catch (error) {
      console.log(JSON.stringify({ id: cell.id, error: `page failed: ${error.message}` }));
    } finally {
      await page.close();
    }
  }
} finally {
  await browser.close();
}
