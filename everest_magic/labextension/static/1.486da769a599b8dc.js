"use strict";(self.rspackChunkeverest_magic=self.rspackChunkeverest_magic||[]).push([[1],{9(e,r,t){var o=t(10),a=t.n(o),s=t(11),n=t.n(s),i=t(12),p=t.n(i),c=t(13),l=t.n(c),d=t(14),v=t.n(d),u=t(15),f=t.n(u),b=t(16),h={};h.styleTagTransform=f(),h.setAttributes=l(),h.insert=p().bind(null,"head"),h.domAPI=n(),h.insertStyleElement=v(),a()(b.A,h),b.A&&b.A.locals&&b.A.locals},16(e,r,t){var o=t(17),a=t.n(o),s=t(18),n=(t.n(s))()(a());n.push([e.id,`/* everest_magic sidebar. JupyterLab theme variables only, so light and dark themes work. */

.everest-panel {
  display: flex;
  flex-direction: column;
  gap: 8px;
  padding: 8px 10px;
  overflow-y: auto;
  min-width: 240px;
  color: var(--jp-ui-font-color1);
  background: var(--jp-layout-color1);
  font-size: var(--jp-ui-font-size1);
}

.everest-header {
  display: flex;
  align-items: center;
  justify-content: space-between;
}

.everest-title {
  font-size: var(--jp-ui-font-size2);
  font-weight: 600;
  letter-spacing: 0.02em;
  text-transform: uppercase;
}

.everest-notebook {
  color: var(--jp-ui-font-color2);
  overflow: hidden;
  text-overflow: ellipsis;
  white-space: nowrap;
}

.everest-panel button.jp-Button {
  cursor: pointer;
  padding: 1px 8px;
  min-height: 20px;
  border: var(--jp-border-width) solid var(--jp-border-color1);
  border-radius: var(--jp-border-radius);
  background: var(--jp-layout-color2);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
}

.everest-panel button.jp-Button:hover:not(:disabled) {
  background: var(--jp-layout-color3);
}

.everest-panel button.jp-Button:disabled {
  cursor: default;
  opacity: 0.6;
}

.everest-empty,
.everest-error {
  padding: 8px;
  border-radius: var(--jp-border-radius);
  background: var(--jp-layout-color2);
  color: var(--jp-ui-font-color2);
}

.everest-empty p {
  margin: 0 0 6px;
}

.everest-error {
  color: var(--jp-error-color1);
}

.everest-hint-code,
.everest-history-text {
  margin: 0;
  padding: 4px 6px;
  white-space: pre-wrap;
  overflow-wrap: anywhere;
  font-family: var(--jp-code-font-family);
  font-size: var(--jp-code-font-size);
  background: var(--jp-layout-color0);
  border-radius: var(--jp-border-radius);
  user-select: text;
}

.everest-section-title {
  display: flex;
  align-items: center;
  gap: 4px;
  margin: 6px 0 4px;
  font-size: var(--jp-ui-font-size1);
  font-weight: 600;
  text-transform: uppercase;
  color: var(--jp-ui-font-color2);
  cursor: pointer;
  user-select: none;
}

.everest-section-title:hover {
  color: var(--jp-ui-font-color1);
}

.everest-caret::before {
  content: '▾';
  display: inline-block;
  width: 1em;
}

.everest-section[data-collapsed='true'] .everest-caret::before {
  content: '▸';
}

.everest-section[data-collapsed='true'] > .everest-list {
  display: none;
}

.everest-section-count {
  margin-left: auto;
  font-weight: normal;
  text-transform: none;
}

/* a long job list scrolls inside its section instead of pushing the history down */
.everest-jobs-list {
  max-height: 45vh;
  overflow-y: auto;
}

.everest-list,
.everest-views {
  list-style: none;
  margin: 0;
  padding: 0;
}

.everest-session,
.everest-job,
.everest-history-entry {
  margin-bottom: 6px;
  padding: 6px;
  border: var(--jp-border-width) solid var(--jp-border-color2);
  border-radius: var(--jp-border-radius);
  background: var(--jp-layout-color1);
}

.everest-session.everest-current {
  border-color: var(--jp-brand-color1);
}

.everest-session-name {
  font-weight: 600;
}

.everest-badge-python {
  background: var(--jp-layout-color3);
}

.everest-badge {
  margin-left: 6px;
  padding: 0 4px;
  border-radius: 3px;
  font-size: 0.85em;
  font-weight: normal;
  background: var(--jp-brand-color3);
  color: var(--jp-ui-font-color1);
}

.everest-session-details {
  display: grid;
  grid-template-columns: auto 1fr;
  gap: 1px 8px;
  margin: 4px 0;
}

.everest-session-details dt {
  color: var(--jp-ui-font-color2);
}

.everest-session-details dd {
  margin: 0;
  overflow: hidden;
  text-overflow: ellipsis;
  white-space: nowrap;
}

.everest-subtitle {
  margin-top: 4px;
  color: var(--jp-ui-font-color2);
}

.everest-view {
  display: flex;
  flex-wrap: wrap;
  gap: 0 8px;
  padding: 2px 0;
  border-top: var(--jp-border-width) dotted var(--jp-border-color2);
}

.everest-view-name {
  flex-basis: 100%;
  font-family: var(--jp-code-font-family);
}

.everest-view-neurons,
.everest-view-size,
.everest-view-ratio {
  color: var(--jp-ui-font-color2);
  white-space: nowrap;
}

.everest-views-empty {
  color: var(--jp-ui-font-color3);
}

.everest-job-top,
.everest-job-bottom,
.everest-history-top {
  display: flex;
  align-items: center;
  gap: 6px;
}

/* a running job shows its whole name (wrapping at spaces); a finished one is one line */
.everest-job-description {
  flex: 1;
  min-width: 0;
  overflow-wrap: anywhere;
  font-family: var(--jp-code-font-family);
}

.everest-job-phase {
  margin-top: 2px;
  color: var(--jp-ui-font-color2);
  font-style: italic;
}

.everest-job.everest-job-compact {
  margin-bottom: 2px;
  padding: 2px 6px;
}

.everest-job-compact .everest-job-description {
  overflow: hidden;
  text-overflow: ellipsis;
  white-space: nowrap;
}

.everest-job-compact .everest-job-phase,
.everest-job-compact .everest-job-progress,
.everest-job-compact .everest-job-bottom {
  display: none;
}

.everest-job-seconds {
  color: var(--jp-ui-font-color2);
  white-space: nowrap;
}

.everest-job-id,
.everest-job-detail,
.everest-history-time {
  color: var(--jp-ui-font-color2);
}

.everest-job-detail {
  flex: 1;
}

.everest-job-status,
.everest-history-status {
  padding: 0 4px;
  border-radius: 3px;
  background: var(--jp-layout-color3);
}

.everest-job-progress {
  height: 5px;
  margin: 4px 0;
  border-radius: 3px;
  overflow: hidden;
  background: var(--jp-layout-color3);
}

.everest-job-bar {
  height: 100%;
  width: 0;
  background: var(--jp-brand-color1);
  transition: width 0.2s linear;
}

[data-status='done'] > .everest-job-top .everest-job-status,
[data-status='done'] > .everest-history-top .everest-history-status {
  background: var(--jp-success-color3);
}

[data-status='done'] .everest-job-bar {
  background: var(--jp-success-color1);
}

[data-status='failed'] > .everest-job-top .everest-job-status,
[data-status='failed'] > .everest-history-top .everest-history-status,
[data-status='cancelled'] > .everest-job-top .everest-job-status,
[data-status='cancelled'] > .everest-history-top .everest-history-status {
  background: var(--jp-warn-color3);
}

[data-status='cancelled'] .everest-job-bar,
[data-status='failed'] .everest-job-bar {
  background: var(--jp-warn-color1);
}

.everest-history-entry {
  cursor: pointer;
}

.everest-history-entry:hover {
  border-color: var(--jp-brand-color1);
  background: var(--jp-layout-color2);
}

.everest-history-kind {
  font-weight: 600;
}

.everest-history-time {
  margin-left: auto;
}

.everest-history-text {
  margin-top: 3px;
  cursor: pointer;
  white-space: pre;
}

/* each line of the magic on one line, cut with an ellipsis (full text on hover) */
.everest-history-line {
  display: block;
  overflow: hidden;
  text-overflow: ellipsis;
  white-space: pre;
}

.everest-history-summary {
  margin-top: 2px;
  color: var(--jp-ui-font-color2);
}
`,""]),t.d(r,{},{A:n})},18(e){e.exports=function(e){var r=[];return r.toString=function(){return this.map(function(r){var t="",o=void 0!==r[5];return r[4]&&(t+="@supports (".concat(r[4],") {")),r[2]&&(t+="@media ".concat(r[2]," {")),o&&(t+="@layer".concat(r[5].length>0?" ".concat(r[5]):""," {")),t+=e(r),o&&(t+="}"),r[2]&&(t+="}"),r[4]&&(t+="}"),t}).join("")},r.i=function(e,t,o,a,s){"string"==typeof e&&(e=[[null,e,void 0]]);var n={};if(o)for(var i=0;i<this.length;i++){var p=this[i][0];null!=p&&(n[p]=!0)}for(var c=0;c<e.length;c++){var l=[].concat(e[c]);o&&n[l[0]]||(void 0!==s&&(void 0===l[5]||(l[1]="@layer".concat(l[5].length>0?" ".concat(l[5]):""," {").concat(l[1],"}")),l[5]=s),t&&(l[2]&&(l[1]="@media ".concat(l[2]," {").concat(l[1],"}")),l[2]=t),a&&(l[4]?(l[1]="@supports (".concat(l[4],") {").concat(l[1],"}"),l[4]=a):l[4]="".concat(a)),r.push(l))}},r}},17(e){e.exports=function(e){return e[1]}},10(e){var r=[];function t(e){for(var t=-1,o=0;o<r.length;o++)if(r[o].identifier===e){t=o;break}return t}function o(e,o){for(var a={},s=[],n=0;n<e.length;n++){var i=e[n],p=o.base?i[0]+o.base:i[0],c=a[p]||0,l="".concat(p," ").concat(c);a[p]=c+1;var d=t(l),v={css:i[1],media:i[2],sourceMap:i[3],supports:i[4],layer:i[5]};if(-1!==d)r[d].references++,r[d].updater(v);else{var u=function(e,r){var t=r.domAPI(r);return t.update(e),function(r){r?(r.css!==e.css||r.media!==e.media||r.sourceMap!==e.sourceMap||r.supports!==e.supports||r.layer!==e.layer)&&t.update(e=r):t.remove()}}(v,o);o.byIndex=n,r.splice(n,0,{identifier:l,updater:u,references:1})}s.push(l)}return s}e.exports=function(e,a){var s=o(e=e||[],a=a||{});return function(e){e=e||[];for(var n=0;n<s.length;n++){var i=t(s[n]);r[i].references--}for(var p=o(e,a),c=0;c<s.length;c++){var l=t(s[c]);0===r[l].references&&(r[l].updater(),r.splice(l,1))}s=p}}},12(e){var r={};e.exports=function(e,t){var o=function(e){if(void 0===r[e]){var t=document.querySelector(e);if(window.HTMLIFrameElement&&t instanceof window.HTMLIFrameElement)try{t=t.contentDocument.head}catch(e){t=null}r[e]=t}return r[e]}(e);if(!o)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");o.appendChild(t)}},14(e){e.exports=function(e){var r=document.createElement("style");return e.setAttributes(r,e.attributes),e.insert(r,e.options),r}},13(e,r,t){e.exports=function(e){var r=t.nc;r&&e.setAttribute("nonce",r)}},11(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var r=e.insertStyleElement(e);return{update:function(t){var o,a,s;o="",t.supports&&(o+="@supports (".concat(t.supports,") {")),t.media&&(o+="@media ".concat(t.media," {")),(a=void 0!==t.layer)&&(o+="@layer".concat(t.layer.length>0?" ".concat(t.layer):""," {")),o+=t.css,a&&(o+="}"),t.media&&(o+="}"),t.supports&&(o+="}"),(s=t.sourceMap)&&"u">typeof btoa&&(o+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(s))))," */")),e.styleTagTransform(o,r,e.options)},remove:function(){var e;null===(e=r).parentNode||e.parentNode.removeChild(e)}}}},15(e){e.exports=function(e,r){if(r.styleSheet)r.styleSheet.cssText=e;else{for(;r.firstChild;)r.removeChild(r.firstChild);r.appendChild(document.createTextNode(e))}}}}]);