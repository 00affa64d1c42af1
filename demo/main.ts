// `npm run demo`: the pay-as-you-go story on loopback. Exits 0 when every step
// happened, 1 naming the step that did not. `--serve` leaves it all running.
import { ADMIN_TOKEN, startStack } from './stack';
import { playStory, StoryError } from './story';

async function main(): Promise<number> {
  const serve = process.argv.includes('--serve');
  console.log('kong-payg demo. A local HTTP front stands in for Kong: it maps API keys to consumers as key-auth does and');
  console.log('drives the real payg-pluginserver with the Kong-side protocol harness the tests use. Stripe is an emulator.\n');
  const stack = await startStack();
  console.log(`gateway ${stack.gateway.url}/api   control service ${stack.svc.url}   Stripe emulator ${stack.stripe.url}   SMTP ${stack.smtp.url.replace(/\/\/.*@/, '//')}\n`);
  let code = 0;
  try {
    await playStory(stack);
    console.log('\nThe whole story played: 200 → 402 → email → top-up → 200 → email, and metering blocked Bob when his credit was spent.');
  } catch (err) {
    console.error(`\n✘ ${err instanceof StoryError ? `step ${err.message}` : (err as Error).stack}`);
    code = 1;
  }
  if (serve) {
    console.log(`\nOperator console: ${stack.svc.console!.url}   sign in with the admin token: ${ADMIN_TOKEN}`);
    console.log(`\nServing until Ctrl-C. Try:
  curl -i -H 'apikey: ${stack.keys.alice}' ${stack.gateway.url}/api/anything
  curl -i -H 'apikey: ${stack.keys.bob}' ${stack.gateway.url}/api/anything
  curl -s -H 'Authorization: Bearer ${ADMIN_TOKEN}' ${stack.svc.url}/admin/customers/${stack.customers.bob}
  curl -s -H 'Authorization: Bearer ${ADMIN_TOKEN}' ${stack.svc.url}/admin/emails/log
  curl -s ${stack.svc.url}/metrics`);
    await new Promise((r) => { process.once('SIGINT', r); process.once('SIGTERM', r); });
  }
  await stack.stop();
  return code;
}

main().then((code) => process.exit(code), (err) => { console.error(err); process.exit(1); });
