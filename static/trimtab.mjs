import "./trimtab.js";
export default globalThis.trimtab;
