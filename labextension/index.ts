/**
 * everest_magic JupyterLab extension: a left sidebar showing, for the notebook in focus,
 * its kernel's everest sessions, indexed views, jobs (with cancel) and query history.
 *
 * `model.ts` holds the kernel connections (one comm per notebook kernel) and emits
 * `stateChanged`; `panel.ts` renders the model; this file wires them into JupyterLab.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { EverestModel } from './model';
import { EverestPanel, PANEL_ID } from './panel';

/** Command ids, all in one namespace. */
export namespace CommandIDs {
  export const open = 'everest-magic:open';
  export const refresh = 'everest-magic:refresh';
  export const insert = 'everest-magic:insert-cell';
}

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M12 2 2 21h20L12 2zm0 4.2L18.6 19H5.4L12 6.2z"/>
    <path d="M12 10.5 8.6 17h6.8L12 10.5z"/>
  </g>
</svg>`;

export const everestIcon = new LabIcon({ name: 'everest_magic:sidebar', svgstr: ICON_SVG });

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'everest_magic:sidebar',
  description:
    'Sidebar for everest_magic: sessions, indexed views, jobs and query history of the notebook kernel.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ): void => {
    const model = new EverestModel();

    const insert = (text: string): void => {
      const notebook = tracker.currentWidget;
      if (!notebook) {
        return;
      }
      NotebookActions.insertBelow(notebook.content);
      const cell = notebook.content.activeCell;
      if (cell) {
        // the kernel's history keeps the cell body's trailing newline: drop it
        cell.model.sharedModel.setSource(text.replace(/\s+$/, ''));
      }
      app.shell.activateById(notebook.id);
    };

    const panel = new EverestPanel(model, { insert });
    panel.title.icon = everestIcon;
    panel.title.caption = 'Everest: sessions, jobs and query history';
    app.shell.add(panel, 'left', { rank: 650 });
    if (restorer) {
      restorer.add(panel, PANEL_ID);
    }

    // the comm target goes on every notebook kernel, not only the one in focus
    tracker.forEach(nb => model.addNotebook(nb.sessionContext));
    tracker.widgetAdded.connect((_, nb) => model.addNotebook(nb.sessionContext));
    tracker.currentChanged.connect((_, nb) => model.setCurrent(nb ? nb.sessionContext : null));
    model.setCurrent(tracker.currentWidget ? tracker.currentWidget.sessionContext : null);

    app.commands.addCommand(CommandIDs.open, {
      label: 'Show the Everest sidebar',
      execute: () => app.shell.activateById(PANEL_ID)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh the Everest sidebar',
      execute: () => model.refresh()
    });
    app.commands.addCommand(CommandIDs.insert, {
      label: 'Insert an everest magic into a new cell',
      execute: args => insert(String(args.text ?? ''))
    });
    if (palette) {
      palette.addItem({ command: CommandIDs.open, category: 'Everest' });
      palette.addItem({ command: CommandIDs.refresh, category: 'Everest' });
    }
  }
};

export default plugin;
