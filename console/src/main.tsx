// The operator console: sign-in, then hash-routed pages.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api } from './api';
import { CohortsPage, CustomerPage, CustomersPage, EmailsPage, OverviewPage, RulesPage, SettlementsPage } from './pages';
import './style.css';

function useHash(): string {
  const [hash, setHash] = useState(location.hash || '#/');
  useEffect(() => {
    const on = () => setHash(location.hash || '#/');
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return hash;
}

function SignIn(props: { onDone: () => void }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState<string>();
  const submit = async (e: Event) => {
    e.preventDefault();
    try { await api.signIn(token); setToken(''); props.onDone(); } catch (err) { setError((err as Error).message); }
  };
  return (
    <main class="signin">
      <form onSubmit={submit}>
        <div class="brand big">payg<span>console</span></div>
        <p class="muted">Sign in with the admin token (<code>PAYG_ADMIN_TOKEN</code>). It is exchanged for a session cookie and not kept in the browser.</p>
        <input type="password" autocomplete="current-password" placeholder="Admin token" value={token} onInput={(e) => setToken((e.target as HTMLInputElement).value)} aria-label="Admin token" autofocus />
        <button type="submit">Sign in</button>
        {error && <div class="error" role="alert">{error}</div>}
      </form>
    </main>
  );
}

const NAV = [['#/', 'Overview'], ['#/cohorts', 'Cohorts'], ['#/customers', 'Customers'], ['#/rules', 'Rules'], ['#/emails', 'Emails'], ['#/settlements', 'Settlements']] as const;

function App() {
  const [state, setState] = useState<'checking' | 'in' | 'out'>('checking');
  const hash = useHash();
  useEffect(() => {
    void api.resume().then((ok) => setState(ok ? 'in' : 'out'));
    const out = () => setState('out');
    window.addEventListener('payg:signed-out', out);
    return () => window.removeEventListener('payg:signed-out', out);
  }, []);
  if (state === 'checking') return null;
  if (state === 'out') return <SignIn onDone={() => setState('in')} />;
  const [route, qs] = hash.slice(1).split('?');
  const query = new URLSearchParams(qs ?? '');
  const parts = route.split('/').filter(Boolean).map(decodeURIComponent);
  const section = parts[0] ?? '';
  let page;
  if (section === '') page = <OverviewPage />;
  else if (section === 'cohorts') page = <CohortsPage />;
  else if (section === 'customers' && parts[1]) page = <CustomerPage key={parts[1]} id={parts[1]} />;
  else if (section === 'customers') page = <CustomersPage query={query} />;
  else if (section === 'rules') page = <RulesPage />;
  else if (section === 'emails') page = <EmailsPage />;
  else if (section === 'settlements') page = <SettlementsPage />;
  else page = <div class="empty"><strong>No such page</strong><p><a href="#/">Back to the overview</a></p></div>;
  return (
    <div class="shell">
      <nav class="side">
        <div class="brand">payg<span>console</span></div>
        {NAV.map(([href, label]) => <a href={href} class={(href === '#/' ? section === '' : href.slice(2) === section) ? 'active' : ''}>{label}</a>)}
        <button class="ghost signout" onClick={() => void api.signOut().then(() => setState('out'))}>Sign out</button>
      </nav>
      <main class="content">{page}</main>
    </div>
  );
}

render(<App />, document.getElementById('app')!);
