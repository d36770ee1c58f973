/** A state badge: colour and text (never colour alone). */
import { stateClass } from '../format';

export function State({ phase, title }: { phase: string; title?: string | undefined }): React.JSX.Element {
  return (
    <span className={`badge ${stateClass(phase)}`} title={title}>
      {phase}
    </span>
  );
}
