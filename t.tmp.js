const pg = require('./dist/spec/support/postgres.js');
const { PostgresStore } = require('./dist/control-service/src/store/postgres.js');
(async () => {
  let t = Date.now(); let url = await pg.freshDatabase(); console.log('start+db', Date.now() - t);
  for (let i = 0; i < 3; i++) { t = Date.now(); url = await pg.freshDatabase(); const t1 = Date.now() - t; const s = await PostgresStore.open(url); console.log('db', t1, 'db+migrate', Date.now() - t); await s.close(); }
  await pg.mochaHooks.afterAll();
})();
