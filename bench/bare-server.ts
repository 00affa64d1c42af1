// The yardstick for bench/decision-api: a bare Node http server that answers
// every request with the same allow decision, doing nothing else.
import http from 'node:http';

const body = JSON.stringify({ allow: true, ttl_ms: 5000 });
http.createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}).listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
